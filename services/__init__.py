"""The WMS services; each package has the same shape: app, api, schemas, domain modules, queries."""
