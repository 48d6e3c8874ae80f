"""Memory and CPU: what the machine has (probe) and how work is split over it."""
