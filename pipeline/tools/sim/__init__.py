"""The fleet simulator's parts: road network, vehicle model, signal sampling, faults, truth file.

The entry point is `pipeline.tools.simulate` (FleetSimulator, simulate_to_recording, load_truth).
"""
