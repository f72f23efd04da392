"""Video model families behind one interface (see base.VideoFamily)."""
