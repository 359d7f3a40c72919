"""Tools around the WMS (not services): the `wms` CLI and the one-machine launcher."""
