"""The pure decision core: standard library only, no I/O, no clock."""
