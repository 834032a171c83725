"""bnfold's pages: the fold report of an entry (also written by `bnfold inspect --html`) and the /ui dashboard.

Pure HTML/CSS/JS/SVG written here, from templates under files/ (string.Template); no asset from the network.
"""
