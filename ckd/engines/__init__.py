"""Training engines: the tensor-native strategies, their replay loaders, mixed precision, and the
vectorized pass that trains several seeds as one stacked model. Imports the core and the data only."""
