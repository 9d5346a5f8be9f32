"""The ring router (`rtl.core.ring.Ring`) alone, with cocotbext-axi streams as its neighbours."""
