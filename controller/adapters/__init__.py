"""Adapters: one module per SDK, each implementing one port of controller.ports."""
