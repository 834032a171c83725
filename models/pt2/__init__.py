"""torch.export archives (.pt2): the allow-list an archive is checked against before torch.export.load.

allowlist  the archive's files and pickled globals, checked before anything is unpickled
program    the exported program's operators, refused unless they are plain tensor operators
"""
