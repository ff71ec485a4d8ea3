"""vmxlab: an x86 virtualization laboratory (protection rings, Intel VMX, KVM) in Python."""

__version__ = "0.1.0"
