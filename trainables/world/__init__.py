"""The controlled world: procedural images (``render``), the ``toy_lt`` data set (``data``), toy
foundation models with a known pre-training prior and view (``zoo``), and the sample figure
(``figure``). See the README, "The controlled world"."""

from trainables.world.render import World, make_world

__all__ = ["World", "make_world"]
