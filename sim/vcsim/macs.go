package main

import (
	"fmt"
	"math/rand"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// macsAsVCenter gives every network adapter of a new clone a MAC address of its own, as vCenter does.
//
// vCenter gives each adapter its own MAC, unique within that vCenter (vSphere 5.1 Networking, GUID-290AE852:
// "Each virtual network adapter in a virtual machine is assigned its own unique MAC address"), and a
// clone's differs from its parent's (VMware Fusion 13, "Cloning Virtual Machines": "The MAC address for a
// clone is different from the parent virtual machine"). It comes from the VMware OUI allocation:
// 00:50:56:XX:YY:ZZ with XX = 0x80 + the vCenter Server ID (0-63) and YY:ZZ random (vSphere 7.0
// Networking, "VMware OUI Allocation", GUID-1B6A280E). An adapter of type "manual" keeps its address (an
// explicit static MAC; what the simulator did before). govmomi 0.24's vcsim (Debian 12) copies the
// source's adapters into the clone with their addresses (simulator/virtual_machine.go CloneVMTask; still
// so at govmomi v0.57.0-alpha.0), so every clone of a template shares the template's MAC; an adapter
// edited with an empty address gets one from the last three characters of the VM's UUID string
// (generateMAC), which repeat (govmomi#3279). This runs as a registry handler when a CloneVM_Task
// succeeds, before the simulator answers the call, so a client never sees the shared address.
type macsAsVCenter struct {
	mu   sync.Mutex
	used map[string]bool
	rng  *rand.Rand
}

// vcenterID is the simulated vCenter Server ID: its addresses are 00:50:56:80:00:00-00:50:56:80:FF:FF.
const vcenterID = 0

func newMacsAsVCenter() *macsAsVCenter {
	m := &macsAsVCenter{used: map[string]bool{}, rng: rand.New(rand.NewSource(time.Now().UnixNano()))}
	for _, entity := range simulator.Map.All("VirtualMachine") {
		if vm, ok := entity.(*simulator.VirtualMachine); ok && vm.Config != nil {
			for _, device := range vm.Config.Hardware.Device {
				if nic, isNic := device.(types.BaseVirtualEthernetCard); isNic {
					m.used[strings.ToLower(nic.GetVirtualEthernetCard().MacAddress)] = true
				}
			}
		}
	}
	return m
}

func (*macsAsVCenter) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "ArcbakeMacs", Value: "macs-as-vcenter"}
}

func (*macsAsVCenter) PutObject(mo.Reference) {}

func (*macsAsVCenter) RemoveObject(types.ManagedObjectReference) {}

func (m *macsAsVCenter) UpdateObject(obj mo.Reference, _ []types.PropertyChange) {
	task, ok := obj.(*mo.Task)
	if !ok || task.Info.State != types.TaskInfoStateSuccess || task.Info.DescriptionId != "VirtualMachine.cloneVm" {
		return
	}
	ref, ok := task.Info.Result.(types.ManagedObjectReference)
	if !ok {
		return
	}
	clone, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || clone.Config == nil {
		return
	}
	simulator.Map.WithLock(clone, func() { m.renew(clone) })
}

// renew gives each adapter of vm that is not "manual" a new address, on a copy of the device: the clone
// shares its source's device structures in govmomi 0.24, and the source keeps its address.
func (m *macsAsVCenter) renew(vm *simulator.VirtualMachine) {
	devices := make([]types.BaseVirtualDevice, 0, len(vm.Config.Hardware.Device))
	renewed := map[int32]string{}
	for _, device := range vm.Config.Hardware.Device {
		nic, isNic := device.(types.BaseVirtualEthernetCard)
		if isNic && nic.GetVirtualEthernetCard().AddressType != string(types.VirtualEthernetCardMacTypeManual) {
			mac, err := m.next()
			if err != nil {
				fmt.Fprintf(os.Stderr, "vcsim: VM %s keeps its source's MAC: %v\n", vm.Name, err)
			} else {
				device = copyDevice(device)
				card := device.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
				card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
				card.MacAddress = mac
				renewed[card.Key] = mac
			}
		}
		devices = append(devices, device)
	}
	if len(renewed) == 0 {
		return
	}
	guestNics := append([]types.GuestNicInfo(nil), vm.Guest.Net...)
	for i := range guestNics {
		if mac, ok := renewed[guestNics[i].DeviceConfigId]; ok {
			guestNics[i].MacAddress = mac
		}
	}
	vm.Guest.Net = guestNics
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: devices}})
}

// next is an unused address of this vCenter's range: 00:50:56:(0x80+ID):YY:ZZ, YY:ZZ random.
func (m *macsAsVCenter) next() (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	const size = 1 << 16
	start := m.rng.Intn(size)
	for i := 0; i < size; i++ {
		low := (start + i) % size
		mac := fmt.Sprintf("00:50:56:%02x:%02x:%02x", 0x80+vcenterID, low>>8, low&0xff)
		if !m.used[mac] {
			m.used[mac] = true
			return mac, nil
		}
	}
	return "", fmt.Errorf("all %d addresses of vCenter ID %d are in use", size, vcenterID)
}

func copyDevice(device types.BaseVirtualDevice) types.BaseVirtualDevice {
	value := reflect.ValueOf(device).Elem()
	out := reflect.New(value.Type())
	out.Elem().Set(value)
	return out.Interface().(types.BaseVirtualDevice)
}
