"""Result files: their schema and their storage on disk."""
