"""The fake token of the canary test; `python tests/canary.py` prints it for the Makefile."""
CANARY = "hf_" + "CANARYcanary" * 3 + "0000"  # built at run time: not a token-shaped literal in the repo

if __name__ == "__main__":
    print(CANARY)
