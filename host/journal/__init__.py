"""The primary journal: received and merged portions, port validity, base copy (seed figure 7)."""
