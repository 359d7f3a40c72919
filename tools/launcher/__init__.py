"""wms-launch: the whole WMS on one machine as local processes, without Docker."""
