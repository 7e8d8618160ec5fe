"""Attention processors storyboard installs on a UNet: ``crosskv`` (cross-attention keys and
values computed once per pipeline call). Each wraps diffusers' own processors and steps aside
wherever it does not apply."""
