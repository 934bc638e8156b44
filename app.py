"""DermTriage: streamlit entry point. Lays out navigation and the sidebar; pages do the rest."""
import streamlit as st

st.set_page_config(page_title="DermTriage", page_icon=":material/dermatology:", layout="wide")

nav = st.navigation([
    st.Page("pages/triage.py", title="Triage", icon=":material/search:", default=True),
    st.Page("pages/model_lab.py", title="Model lab", icon=":material/science:"),
    st.Page("pages/reader_study.py", title="Reader study", icon=":material/school:"),
])
nav.run()
