"""CrossGuard pack `gpuburst-guardrails`: what no stack of the project may create, whatever its config."""
