"""Training ViT families with one recipe, and the ISI monitor callback."""

from .monitor import ISIMonitor as ISIMonitor
from .recipe import list_recipes as list_recipes
from .recipe import load_recipe as load_recipe
