"""Pod networking through CNI plugins."""
