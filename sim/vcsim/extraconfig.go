package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// extraConfigAsVCenter makes the simulator keep a VM's extraConfig the way vCenter does: setting a key
// that exists replaces its value, and setting it to "" removes the key (what `builder status` relies on
// to take guestinfo.arcbake.secrets out of a clone's configuration). govmomi 0.24 (Debian 12) appends a
// duplicate entry instead and can remove nothing; vcsim itself was fixed in govmomi v0.31.0 (commit
// 112777b8 "vcsim: Fix VM ExtraConfig", simulator/virtual_machine.go applyExtraConfig), whose rules this
// follows. It runs as a registry handler when a ReconfigVM_Task succeeds, while the call still holds the
// VM's lock.
type extraConfigAsVCenter struct{}

func (extraConfigAsVCenter) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "ArcbakeExtraConfig", Value: "extra-config-as-vcenter"}
}

func (extraConfigAsVCenter) PutObject(mo.Reference) {}

func (extraConfigAsVCenter) RemoveObject(types.ManagedObjectReference) {}

func (extraConfigAsVCenter) UpdateObject(obj mo.Reference, _ []types.PropertyChange) {
	task, ok := obj.(*mo.Task)
	if !ok || task.Info.State != types.TaskInfoStateSuccess || task.Info.Entity == nil ||
		task.Info.DescriptionId != "VirtualMachine.reconfigVm" {
		return
	}
	vm, ok := simulator.Map.Get(*task.Info.Entity).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	vm.Config.ExtraConfig = mergeExtraConfig(vm.Config.ExtraConfig)
}

// mergeExtraConfig keeps one entry per key, in first-seen order with the last value, and drops the keys
// whose last value is "".
func mergeExtraConfig(entries []types.BaseOptionValue) []types.BaseOptionValue {
	index := map[string]int{}
	merged := make([]types.BaseOptionValue, 0, len(entries))
	for _, entry := range entries {
		option := entry.GetOptionValue()
		if i, seen := index[option.Key]; seen {
			merged[i] = entry
			continue
		}
		index[option.Key] = len(merged)
		merged = append(merged, entry)
	}
	kept := merged[:0]
	for _, entry := range merged {
		if value, isString := entry.GetOptionValue().Value.(string); isString && value == "" {
			continue
		}
		kept = append(kept, entry)
	}
	return kept
}
