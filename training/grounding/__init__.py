"""The vision probe and the pointer agent's training: which frozen features find named
structures (``probe``), and the query-conditioned head trained on real volumes, the AAL
atlas, nuclei and phantoms (``dataset``, ``train``)."""
