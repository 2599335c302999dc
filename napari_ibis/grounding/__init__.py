"""Finding the named structure: frozen pretrained image features, a sentence encoder for the
query, and a light query-conditioned head that maps where the structure lies.

- :mod:`.encoders`: pretrained image encoders behind one interface (a slice in, a grid of
  feature vectors out, with the framing that maps grid cells back to pixels);
- :mod:`.text`: the query as a sentence embedding (all-MiniLM-L6-v2);
- :mod:`.head`: the query-conditioned head (a probability per grid cell, and whether the
  structure is there at all).

The pointer agent (:mod:`napari_ibis.policies.pointer`) is built on these parts.
"""
