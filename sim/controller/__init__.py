"""The controller (`rtl.core.controller.Controller`) alone, its engines played by cocotb models."""
