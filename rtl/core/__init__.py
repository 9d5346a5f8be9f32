"""The Tandem core: controller, vector buffer and engines (see `rtl.core.core`)."""
