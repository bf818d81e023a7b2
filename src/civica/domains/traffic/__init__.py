"""Road traffic: SUMO scenarios and adaptive signal control over TraCI."""
