"""pilot-factory: keeps pilots submitted to batch systems at the level the ready backlog needs (Harvester, DIRAC's
SiteDirector, glideinWMS's factory), withdraws queued ones when the work is gone, and follows each batch job to its
end."""
