"""Result files, history, statistical comparison and rendered reports."""
