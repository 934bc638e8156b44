"""DermTriage: streamlit entry point. Lays out navigation and the sidebar; pages do the rest."""
from pathlib import Path

import streamlit as st

from run import keep_streamlit_local

keep_streamlit_local()   # Streamlit looks up nothing outside this machine, under a plain `streamlit run` too

# A local icon file: a ":material/...:" favicon is fetched from a font CDN, and the app stays offline.
st.set_page_config(page_title="DermTriage", page_icon=str(Path(__file__).parent / "assets" / "favicon.png"),
                   layout="wide")

nav = st.navigation([
    st.Page("pages/triage.py", title="Triage", icon=":material/search:", default=True),
    st.Page("pages/model_lab.py", title="Model lab", icon=":material/science:"),
    st.Page("pages/reader_study.py", title="Reader study", icon=":material/school:"),
])
nav.run()
