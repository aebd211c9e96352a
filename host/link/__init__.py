"""The host's side of the device link: a serial transport (`serial`) and the device driver (`device`)."""
