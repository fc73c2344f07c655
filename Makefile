# Thin wrapper: tools/dev.sh is the one entry point (it also works where make is not installed yet).
.PHONY: setup test lint demo bench fuzz faults sim
setup test lint demo bench fuzz faults sim:
	bash tools/dev.sh $@
