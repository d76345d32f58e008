"""Examples and demos (scikit-learn digits); library code never imports them."""
