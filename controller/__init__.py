"""gpuburst: the control plane that bursts GPU inference from a private cluster onto cloud nodes."""
