"""Shared network pieces: backbones, the functional task model of the methods that adapt at test
(`kshot.nn.functional`), and the NTM / LRUA memory addressing (`kshot.nn.memory`)."""
