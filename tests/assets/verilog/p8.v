module p8;
  task t;
    input a;
    reg r;
`ifdef X
    reg q;
`endif
    begin end
  endtask
endmodule
