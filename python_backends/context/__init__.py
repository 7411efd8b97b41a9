"""Context transfer: the per-stream context store, context replacement and visual focus."""
