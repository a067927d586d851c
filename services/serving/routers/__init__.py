"""HTTP routers of the serving app, one file per resource."""
