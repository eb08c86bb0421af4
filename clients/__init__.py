"""The fedal Flower ClientApp: one stateful active-learning client."""
