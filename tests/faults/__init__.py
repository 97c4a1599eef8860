"""The fault suite: a kill loop of SIGKILLed workers and SIGTERMed CLI runs, portal and SMTP faults,
hostile inputs, a scan for secrets, concurrent ignore.yml writers. Each test prints a figure
(tests/support/faultkit.figure), shown in a "fault figures" section at the end of the run.
"""
