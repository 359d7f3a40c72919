"""``wms-broker-setup``: the broker users of a deployment and what each may do."""
