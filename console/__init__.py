"""The editors' console: a Streamlit app over imagegen_core (layout and widgets only). Start it with
``imagegen console``."""
