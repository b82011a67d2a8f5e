`ifdef A
module br_a(input x);
endmodule
`else
module br_b(input y);
endmodule
`endif
