"""Images: references, registries, the registry client, and the layer store."""
