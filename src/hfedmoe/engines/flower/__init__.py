"""The Flower engine (flwr 1.42, Message API): ServerApp, ClientApp, Strategy and the record codec.

The same federation as :mod:`hfedmoe.engines.simulation` on Flower's Simulation Engine (Ray) or
Deployment Engine (SuperLink + SuperNodes). Import the submodules directly; importing this package
does not import flwr.
"""
