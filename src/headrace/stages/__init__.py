"""Pipeline stages: source, shuffle, map/filter, batch, take/skip, repeat, partitioning."""
