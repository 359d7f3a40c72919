"""What two or more SPD WMS services share: settings, schema, states, messages, broker, outbox, auth."""
