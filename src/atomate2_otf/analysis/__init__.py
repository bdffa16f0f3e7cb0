"""Reading runs back: their state, their numbers and their figures."""
