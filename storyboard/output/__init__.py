"""Phase 4, artifacts: what a build leaves on disk. No torch.

- ``cache``: the panel cache (PNG by cache key) and the roots `clean` reads;
- ``pnginfo``: panel PNGs that carry their recipe (A1111 ``parameters`` + storyboard's record);
- ``place``: cached panels put in an output folder, re-labelled for their story and panel;
- ``pages``: captioned comic pages (``geometry`` measures them, ``fonts`` spaces their text,
  ``balloons`` draws speech over panels); ``pdf``: the print PDF of them; ``cbz``: the comic
  book archive; ``glyphs``: characters the page font lacks;
- ``manifest``: ``manifest.json``, what a build did, and whether its pages are still current;
- ``locks``: where two storyboard processes meet (an output folder, the cache).
"""
