"""Build targets: the virtual board (`sim`) and real dev boards."""
