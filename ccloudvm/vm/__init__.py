"""One virtual machine: accelerator, QEMU command line and monitor, readiness, warm boot, drivers."""
