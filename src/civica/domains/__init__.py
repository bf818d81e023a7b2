"""City services, one package each (water, traffic, ...), all with the same file names."""
