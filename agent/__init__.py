"""The node agent: probe -> decode -> identify -> ship."""
